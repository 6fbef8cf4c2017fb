"""Ray Serve applications: the platform's HTTP API (`serve_apps.app:build`)."""
