"""Model-sync Lambda: S3 model changes (via SQS) -> one SSM command per batch to the GPU nodes."""
