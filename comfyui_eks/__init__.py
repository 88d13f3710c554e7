"""The `comfyui-eks` command-line tool: deploy, status, invoke, models, cost, jobs."""
