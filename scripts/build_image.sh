#!/usr/bin/env bash
# Build vipo's cluster image (Dockerfile) and push it; prints the name to put in cluster.yaml `docker.image`.
#   scripts/build_image.sh <registry>/vipo [tag]      default tag: <ray version>-py311-gpu (as in cluster.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
repository=${1:?usage: scripts/build_image.sh <registry>/vipo [tag]}
test -f requirements.lock || { echo "requirements.lock missing: run scripts/lock.sh first" >&2; exit 2; }
ray_version=$(sed -n 's/^ARG RAY_VERSION=//p' Dockerfile)
image="${repository}:${2:-${ray_version}-py311-gpu}"
docker build --platform linux/amd64 -t "$image" .
docker push "$image"
echo "pushed ${image}: set docker.image in cluster.yaml to it"
