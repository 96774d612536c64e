# syntax=docker/dockerfile:1
# seqcomm images (docs/smacv2.md).
#   base: the package on CUDA PyTorch       docker build --target base -t seqcomm .
#   sc2:  base + StarCraft II 4.10, the SMAC and SMACv2 maps and smacv2
#                                           docker build --target sc2 -t seqcomm:sc2 .
# Run with GPUs: docker run --gpus all --rm -it seqcomm:sc2 seqcomm fit --config conf/smac_3m.yaml

# torch 2.13 is what torchrl 0.14's C++ extension and the test suite were run with.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# ---------------------------------------------------------------------------- base
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/etc/pip-constraints.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Keep the image's CUDA build of torch: every later `pip install` is constrained to it.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        > /etc/pip-constraints.txt \
 && cat /etc/pip-constraints.txt
WORKDIR /workspace/seqcomm
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -e ".[dev]" \
 && python -c "import torch, torchrl, seqcomm; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'torchrl', torchrl.__version__)"
CMD ["seqcomm", "--help"]

# ---------------------------------------------------------------------------- sc2
FROM base AS sc2
ARG SC2_VERSION=4.10
ARG SMACV2_REF=main
# PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION: StarCraft II's protocol package (s2clientprotocol)
# ships old generated code that protobuf >= 4 (needed by wandb and tensorboard) only loads
# with its pure-Python backend.
ENV SC2PATH=/opt/StarCraftII \
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget unzip \
 && rm -rf /var/lib/apt/lists/*
# StarCraft II Linux package (typing the password 'iagreetotheeula' accepts Blizzard's AI and
# Machine Learning License); it unpacks to StarCraftII/.
RUN wget -q -O /tmp/SC2.zip "https://blzdistsc2-a.akamaihd.net/Linux/SC2.${SC2_VERSION}.zip" \
 && unzip -q -P iagreetotheeula /tmp/SC2.zip -d /opt \
 && rm /tmp/SC2.zip \
 && test -d "$SC2PATH/Versions"
# SMAC maps (3m, 8m, 2s3z, ...), then SMACv2's (32x32_flat for the 10gen_* scenarios), all in
# $SC2PATH/Maps/SMAC_Maps whatever the folder layout inside the zips.
RUN mkdir -p "$SC2PATH/Maps/SMAC_Maps" /tmp/maps \
 && wget -q -O /tmp/maps/smac.zip \
        https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip \
 && wget -q -O /tmp/maps/smacv2.zip \
        https://github.com/oxwhirl/smacv2/releases/download/maps/SMAC_Maps.zip \
 && unzip -q -o /tmp/maps/smac.zip -d /tmp/maps/smac \
 && unzip -q -o /tmp/maps/smacv2.zip -d /tmp/maps/smacv2 \
 && find /tmp/maps/smac /tmp/maps/smacv2 -name '*.SC2Map' \
        -exec cp -f {} "$SC2PATH/Maps/SMAC_Maps/" \; \
 && rm -rf /tmp/maps \
 && test -f "$SC2PATH/Maps/SMAC_Maps/3m.SC2Map" \
 && test -f "$SC2PATH/Maps/SMAC_Maps/32x32_flat.SC2Map"
# smacv2 pins protobuf<3.21, which wandb and tensorboard cannot use: install it without its
# dependencies, then those unpinned. pysc2 drags in enum34, a backport that must not shadow
# the standard library's enum: remove it.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps "git+https://github.com/oxwhirl/smacv2.git@${SMACV2_REF}" \
 && pip install "pysc2>=3.0.0" "s2clientprotocol>=4.10.1.75800.0" "absl-py>=0.1.0" \
        "pygame>=2.0.0" \
 && pip uninstall -y enum34 \
 && python -c "from seqcomm.envs.smacv2 import check_protobuf, missing_requirements as m; \
assert not m(), m(); check_protobuf(); import smacv2.env; print('smacv2 ready, SC2PATH', \
__import__('os').environ['SC2PATH'])"
# Check on a GPU host: docker run --rm seqcomm:sc2 python -m pytest tests/test_smacv2.py -m sc2
CMD ["seqcomm", "--help"]
