#!/usr/bin/env bash
# Build the desktop Dockerfile on a CPU-only machine without a registry: a Debian base made from Debian
# packages (debootstrap), a CPU torch wheel, and the `smoke` stage, which runs `lappdeploy --help` and a
# tiny compress -> export -> bench inside the image. Needs root, podman and debootstrap (Debian packages).
#
#   sudo tools/container_smoke.sh [TORCH_CPU_WHEEL]
#
# Without a wheel argument it uses the torch CPU wheel in $PIP_FIND_LINKS or /opt/wheels when there is one
# (else pip installs torch from PyPI, which works but downloads the CUDA build, ~5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=localhost/lappdeploy-debian:bookworm
PODMAN=(podman --storage-driver vfs)   # vfs: no overlay filesystem needed

if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE_IMAGE"
    rm -rf "$rootfs"
fi

wheel="${1:-$(ls "${PIP_FIND_LINKS:-/opt/wheels}"/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)}"
preinstall=""
if [ -n "$wheel" ]; then
    cp "$wheel" docker/wheels/
    version=$(basename "$wheel" | cut -d- -f2 | cut -d+ -f1)          # e.g. 2.13.0
    minor=$(echo "$version" | cut -d. -f2)
    # torchvision 0.(minor+15) pins exactly this torch, so pip keeps the CPU wheel
    preinstall="torch==${version}+cpu torchvision==0.$((minor + 15)).*"
fi

# Behind a TLS-inspecting proxy the host trusts extra CAs (/usr/local/share/ca-certificates) that the image
# does not: lend the RUN steps the host's CA bundle so pip can reach PyPI (the image itself keeps its own).
certs=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
    certs=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi

# chroot isolation: RUN steps work without the namespaces and rlimits a sandbox may refuse
"${PODMAN[@]}" build --isolation chroot --target smoke "${certs[@]}" \
    --build-arg BASE="$BASE_IMAGE" --build-arg EXTRAS=onnx,ort,report --build-arg PREINSTALL="$preinstall" \
    -t lappdeploy:smoke .
echo "container smoke build passed: lappdeploy --help, compress, export and bench ran inside the image"
