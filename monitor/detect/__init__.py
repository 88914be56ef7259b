"""Detection of adversarial inputs: squeezers, per-input scores, calibrated thresholds.

Pure tensor code (torch and numpy only): nothing here imports MLflow or the database.
"""
