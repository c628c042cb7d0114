"""The HTTP doors: pages, JSON API, resumable uploads, log-in, security headers and limits, the server."""
