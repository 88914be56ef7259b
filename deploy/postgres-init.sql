-- The compose stack's PostgreSQL holds two databases: robmon's (POSTGRES_DB) and MLflow's.
CREATE DATABASE mlflow OWNER robmon;
