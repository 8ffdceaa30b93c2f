"""Orchestration of the DVC pipeline with Prefect (deployments: ../prefect.yaml).

``flows.commands`` runs ``dvc``/``ebmrl`` commands and classifies their failures (no
Prefect in it); ``flows.pipeline`` holds the Prefect flows and tasks; ``flows.mlflow_runs``
opens the pipeline's MLflow parent run; ``flows.services`` starts and stops the local
servers (Prefect, workers, MLflow, S3). The ``ebmrl`` package never imports this one.
"""

from pathlib import Path

# A gpu worker's own copy of this code: the gpu deployment's pull step moves there
# (prefect.yaml), so the flow code need not sit at the path `prefect deploy` ran in.
CODE_DIR_ENV = "EBMRL_CODE_DIR"
# The checkout this flow code was loaded from.
CODE_DIR = Path(__file__).resolve().parent.parent
