# The flywheel image: the same install as `make install` (torch 2.13.0 first).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make gcc && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN make install
ENV PATH=/app/.venv/bin:$PATH
EXPOSE 8000 8100
CMD ["flywheel", "--help"]
