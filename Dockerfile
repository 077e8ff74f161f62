# The server image: `mcp-sandbox serve --transport http` and `mcp-sandbox launcher serve`
# (compose.yaml runs one container of each). Build it with `mcp-sandbox images build --server`:
# that makes the wheels on the host with pip and hands them to this file, so the build itself
# needs no network. No `# syntax=` line: that would pull a frontend.
ARG BASE=mcp-sandbox-base:bookworm
FROM ${BASE}

# Dependencies first: their layer stays cached while only the project changes.
COPY wheels/deps/ /tmp/wheels/deps/
RUN python3 -m venv /opt/mcp-sandbox \
 && /opt/mcp-sandbox/bin/pip install --quiet --no-index --no-cache-dir \
        --find-links /tmp/wheels/deps /tmp/wheels/deps/*.whl \
 && rm -rf /tmp/wheels

COPY wheels/app/ /tmp/wheels/app/
RUN /opt/mcp-sandbox/bin/pip install --quiet --no-index --no-cache-dir --no-deps \
        /tmp/wheels/app/*.whl \
 && rm -rf /tmp/wheels \
 && mkdir -p /run/mcp-sandbox /var/log/mcp-sandbox/server /var/log/mcp-sandbox/launcher \
 && chown 10001:10001 /var/log/mcp-sandbox/server

ENV PATH=/opt/mcp-sandbox/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The server runs as this uid; compose runs the launcher as root (it opens the Docker socket).
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["mcp-sandbox"]
CMD ["serve", "--transport", "http"]
