# Test only (make compose-smoke): the MongoDB stand-in where no mongo image can be pulled. nx-27017, served by
# `python -m vecsync.mongo_standin` as `make run` serves it; tests/compose/compose.standins.yaml sets its command.
# tests/compose/smoke.py builds it from the repository root once its wheelhouse holds nx-27017; nothing is fetched.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /src/constraints.txt
COPY wheelhouse /src/wheelhouse
COPY libs/vecsync /src/libs/vecsync
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /src/wheelhouse --constraint /src/constraints.txt \
    nx-27017 /src/libs/vecsync \
 && rm -rf /src
# compose.yaml runs mongo as 999:999, the official image's mongodb user, which owns its data folders there too: a
# fresh named volume takes the owner of the folder it is mounted on.
RUN mkdir -p /data/db /data/configdb && chown 999:999 /data/db /data/configdb
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 999:999
EXPOSE 27017
