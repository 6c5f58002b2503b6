"""MLflow: the logged model, the registry, serving, the UI and tracking server, credentials, a shared store."""
