"""The durable job API (three Lambdas) and the job contract shared with the runner sidecar.

Packaged flat (every module at the root of the zip, handlers `api.handler`,
`dead_letters.handler`, `webhooks.handler`); the tests import it as `lambda_src.jobs`.
"""
