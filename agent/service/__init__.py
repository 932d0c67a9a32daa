"""``retllm serve``: the REST + SSE service, the OpenAI-compatible chat endpoint and the web chat page."""
