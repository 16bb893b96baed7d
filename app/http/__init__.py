"""The HTTP side of a worker host: one composition root (`server`) that builds the app from
the metrics exposition (app.metrics), the one /health route and the JSON API.

Nothing below app.http imports it: the metrics layer knows no routes, and a pool
child (workers.tasks) never loads FastAPI or uvicorn.
"""
