# The test image for Python 3.13 and CLM 1.35: a Debian trixie base (python3,
# python3-venv, Debian's PlantUML and a JRE; worker-image/make-base-image.sh)
# and a venv at /opt/venv with CLM, clm-workers' dependencies and the test
# tools, installed from wheels downloaded beforehand (the build needs no network):
#
#   docker build -f worker-image/py313-tests.Dockerfile -t IMAGE WHEELS_DIR
#
# where WHEELS_DIR holds the wheels and the requirements.txt they were downloaded for.
#
# .ci/run-py313 downloads the wheels, builds this image and runs the suite in it.
ARG BASE=clm-workers-base:trixie-clm
FROM ${BASE}

LABEL org.opencontainers.image.title="clm-workers-py313-tests" \
      org.opencontainers.image.description="clm-workers test suite on Python 3.13 with CLM 1.35"

COPY . /wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -q --no-index --find-links /wheels -r /wheels/requirements.txt \
    && rm -rf /root/.cache

ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /repo
