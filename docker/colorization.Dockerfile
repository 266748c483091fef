# syntax=docker/dockerfile:1
# ssl-colorization: Colorization (Zhang, Isola & Efros 2016): colourful image colourisation, in a pinned CUDA environment.
#   docker/build.sh colorization                       # builds the image ssl-colorization (context: the repository root)
#   docker run --gpus all ssl-colorization             # trains on the embedded `shapes` data
#   docker run --gpus all ssl-colorization --epochs 10 --batch-size 128        # arguments go to colorization/train.py
# The README shows mounting a dataset and getting the run directory out.
#
# Base: the official PyTorch image whose torch is the lock's, 2.14.1+cu130 (CUDA 13.0, cuDNN 9.24.0.43,
# cuBLAS 13.1.1.3: the versions requirements.lock pins), so torch and its CUDA wheels come from the
# image and everything else from the lock. The first five instructions are the same in all six images,
# so Docker builds those layers once and shares them.
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg MPLCONFIGDIR=/tmp/mpl \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
WORKDIR /opt/ssl-lab
COPY requirements.lock ./
# The lock without the torch stack (kept from the image) and without the test tools; the check
# fails the build if the image's torch ever differs from the lock's.
RUN grep -vE '^(torch|torchvision|triton|nvidia-|cuda-|pytest|ruff|iniconfig|pluggy|Pygments)' requirements.lock \
        > /tmp/runtime.lock \
    && python -m pip install --no-cache-dir -r /tmp/runtime.lock \
    && rm /tmp/runtime.lock \
    && python -c "import re, torch, torchvision; lock = open('requirements.lock').read(); \
want = re.search(r'^torch==(\S+)', lock, re.M).group(1); \
assert torch.__version__.split('+')[0] == want, (torch.__version__, want); print('torch', torch.__version__)"
RUN useradd --create-home --uid 10001 --shell /bin/bash ssl \
    && mkdir -p /opt/ssl-lab/data /opt/ssl-lab/runs \
    && chown ssl:ssl /opt/ssl-lab/data /opt/ssl-lab/runs

COPY common/ common/
COPY eval/ eval/
COPY colorization/ colorization/

# Numeric, so that the host resolves it (docker run --user overrides it to write into a host folder).
USER 10001:10001
# The embedded data set, generated once at build time (./data/shapes, 10 classes, 5000 + 1000 images).
RUN python -c "from common.datasets import build_dataset; [build_dataset('shapes', 'data', s) for s in ('train', 'test')]"

ENTRYPOINT ["python", "colorization/train.py"]
CMD ["--data", "shapes"]
