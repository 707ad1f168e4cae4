# vipo's cluster image (cluster.yaml `docker.image`): Ray's GPU image, vipo's pinned dependencies from
# requirements.lock, DeepSpeed with its CPU-Adam op compiled in (otherwise the first ZeRO-offload step JIT-compiles
# it for minutes on every node), and vipo installed. Build and push: scripts/build_image.sh <registry>/vipo
# RAY_VERSION must equal the ray pin in requirements.lock (tests/test_cluster.py checks it).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

# Compilers for the DeepSpeed op; git for the run identity (vipo.git_commit of the shipped working dir).
RUN sudo apt-get update \
    && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential ninja-build git \
    && sudo rm -rf /var/lib/apt/lists/*

WORKDIR /home/ray/vipo
COPY --chown=ray:users requirements.lock ./
RUN grep -viE '^deepspeed==' requirements.lock > /tmp/requirements-no-deepspeed.txt \
    && pip install --no-cache-dir -r /tmp/requirements-no-deepspeed.txt

# DeepSpeed builds from source against the torch installed above; only CPU-Adam is prebuilt (the other ops stay JIT).
# The build machine has no GPU: DS_ACCELERATOR=cuda builds the op for the CUDA accelerator the nodes run.
RUN DS_ACCELERATOR=cuda DS_BUILD_OPS=0 DS_BUILD_CPU_ADAM=1 TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0" \
        pip install --no-cache-dir --no-build-isolation "$(grep -iE '^deepspeed==' requirements.lock | awk '{print $1}')" \
    && python -c "from deepspeed.git_version_info import installed_ops; assert installed_ops['cpu_adam'], installed_ops"

# vipo itself (the `vipo` command). Jobs sent with `ray job submit --working-dir .` run their shipped copy instead.
COPY --chown=ray:users . ./
RUN pip install --no-cache-dir --no-deps . && vipo --help > /dev/null
