# lappdeploy for desktop NVIDIA GPUs: compress, export (checked ONNX, TensorRT engines) and bench.
#
#   docker build -t lappdeploy .
#   docker run --rm --gpus all -v "$PWD/runs:/work/runs" lappdeploy export runs/r20 --trt --precision fp16
#
# BASE is an NGC PyTorch container: torch, CUDA, cuDNN and TensorRT's Python package come with it and
# are reused (a venv with --system-site-packages), so nothing large is downloaded again. Any image with
# Python >= 3.10 works (README, "Containers"): the CPU smoke build of tools/container_smoke.sh uses a
# Debian base made with debootstrap and a CPU torch wheel from docker/wheels/.
ARG BASE=nvcr.io/nvidia/pytorch:25.10-py3

FROM ${BASE} AS build
# pip extras of lappdeploy: onnxruntime-gpu for the GPU image (never together with onnxruntime), ModelOpt
# for the FP16 / INT8 graphs TensorRT builds from
ARG EXTRAS=onnx,ort-gpu,modelopt,report
# requirements installed before lappdeploy (e.g. a CPU torch wheel from /wheels); empty: keep the base's
ARG PREINSTALL=""
WORKDIR /src
COPY docker/wheels/ /wheels/
COPY pyproject.toml setup.cfg README.md ./
COPY lappdeploy ./lappdeploy
# PREINSTALL is a list of requirements: word splitting is intended
# hadolint ignore=SC2086
RUN python3 -m venv --system-site-packages /opt/lappdeploy \
    && /opt/lappdeploy/bin/pip install --no-cache-dir --find-links /wheels ${PREINSTALL} ".[${EXTRAS}]" \
    && /opt/lappdeploy/bin/lappdeploy --version

FROM ${BASE} AS runtime
COPY --from=build /opt/lappdeploy /opt/lappdeploy
# uid 10001, not 1000: Ubuntu 24.04 based images already have a user (ubuntu) there
RUN useradd --create-home --uid 10001 --shell /bin/sh lappdeploy \
    && mkdir -p /work && chown lappdeploy /work
USER 10001
WORKDIR /work
ENV PATH=/opt/lappdeploy/bin:$PATH \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["lappdeploy"]
CMD ["--help"]

# `--target smoke`: the image compresses, exports and times a tiny model (what tools/container_smoke.sh builds)
FROM runtime AS smoke
# root for this check only: a chroot-isolated build (podman --isolation chroot, as in the smoke script) cannot
# start a RUN step as another user ("fork/exec /bin/sh: permission denied"); the runtime stage stays uid 10001
# hadolint ignore=DL3002
USER 0
RUN lappdeploy --help > /dev/null \
    && lappdeploy compress --model tiny_resnet --dataset synthetic --synthetic-shape 3x16x16 \
        --synthetic-samples 64 --batch-size 16 --epochs 1 --round-to 1 --device cpu --out /tmp/run \
    && lappdeploy export /tmp/run \
    && lappdeploy bench /tmp/run --runtime ort --device cpu --batch 1 --min-seconds 1 --warmup-seconds 0.2 --no-plot
