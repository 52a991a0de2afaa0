"""One module per part of the system; each adds its commands to the root app in `register(app, ingest_app)`."""
