# A FedLedger node (supernode or edge node) and the console, on the pinned requirements.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch's CPU build keeps the image small (the default Linux wheel pulls GBs of CUDA libraries);
# build with --build-arg TORCH_INDEX=https://pypi.org/simple for the CUDA one.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt

COPY . .
# the stubs are committed, but the image always regenerates them from proto/
RUN python proto/generate.py

RUN useradd --create-home --uid 10001 fedledger && mkdir -p /home/node /data /app/runs \
    && chown fedledger /home/node /data /app/runs
USER fedledger
EXPOSE 8080
CMD ["python", "main.py", "--help"]
