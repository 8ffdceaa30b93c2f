"""The edges of the package: where it meets processes, servers and people.

MLflow tracking (``tracking``), the local OpenAI-compatible HTTP server
(``http_server``), params.yaml profiles (``profiles``) and the exit-code contract with
orchestrators (``exit_codes``). The core below (data, models, rewards, training,
evaluation) never imports these; the stage entry points and the CLI above do.
"""
