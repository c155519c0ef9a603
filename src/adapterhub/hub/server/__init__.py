"""The hub's registry server: FastAPI app, SQLAlchemy models with Alembic migrations, blob storage.

Needs the server extras (fastapi, uvicorn, sqlalchemy, alembic, python-multipart; psycopg for PostgreSQL, boto3 for
S3). The client (:mod:`adapterhub.hub.client`) needs none of them.
"""
