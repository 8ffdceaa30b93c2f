"""Orchestration of the DVC pipeline with Prefect (deployments: ../prefect.yaml).

``flows.commands`` runs ``dvc``/``ebmrl`` commands and classifies their failures (no
Prefect in it); ``flows.pipeline`` holds the Prefect flows and tasks; ``flows.mlflow_runs``
opens the pipeline's MLflow parent run; ``flows.services`` starts and stops the local
servers (Prefect, workers, MLflow, S3). The ``ebmrl`` package never imports this one.
"""
