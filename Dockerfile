# retllm serve: the REST + SSE service, with the CLIP embedder on the CPU.
# The MLLM (fine stage, chat) runs elsewhere: vLLM in docker-compose.yml, or a hosted OpenAI-compatible API.
#
#   docker build -t retllm .
#   docker run -p 8080:8080 -e RETLLM_API_TOKEN=... -e OPENAI_API_KEY=... \
#     -e RETLLM_SCORER=openai:gpt-4o-mini -v retllm-data:/data retllm
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, from PyTorch's CPU index: the PyPI wheels pull ~3 GB of CUDA libraries that a
# CPU embedder never uses. The versions are the ones the test suite runs with; '.[serve]' below then finds
# torch>=2.6 / torchvision>=0.21 satisfied and leaves them alone.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /src
# Only what the package is built from (see [tool.setuptools] in pyproject.toml).
COPY pyproject.toml README.md ./
COPY retllm ./retllm
COPY agent ./agent
COPY tools ./tools
COPY prompts ./prompts
RUN pip install '.[serve]' && rm -rf /src

# Non-root; the data volume (embedded store, image blobs, model downloads) belongs to that user.
RUN useradd --create-home --uid 10001 --user-group retllm \
    && mkdir -p /data/hf \
    && chown -R retllm:retllm /data
ENV RETLLM_DATA_DIR=/data \
    HF_HOME=/data/hf \
    RETLLM_DEVICE=cpu
VOLUME ["/data"]
USER retllm
WORKDIR /data

EXPOSE 8080
# Liveness only (/healthz answers as soon as the server runs); docker-compose.yml checks /readyz instead.
# slim has no curl: Python's urllib, which exits non-zero on a refused connection or a non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# A non-loopback bind needs RETLLM_API_TOKEN (16+ characters): without it the service refuses to start.
CMD ["retllm", "serve", "--host", "0.0.0.0", "--port", "8080"]
