"""Production deployment files kept in one place each (docs/DEPLOY.md): what is generated from what, and the
per-run Kubernetes resources of a dataset. No Dagster import (the Dagster side is ``ingest_platform/defs/k8s.py``).
"""
