#!/usr/bin/env bash
# Builds the per-method images, tagged ssl-<method> and ssl-<method>:<project version>.
#   docker/build.sh                      # all six: dino byol barlow_twins dino_twins jigsaw colorization
#   docker/build.sh jigsaw dino          # only these
#   DOCKER_BUILD_OPTS="--no-cache --pull" docker/build.sh byol     # extra options for `docker build`
# The build context is the repository root; each Dockerfile copies only what its method and eval need.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL=(dino byol barlow_twins dino_twins jigsaw colorization)

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
methods=("$@")
[[ ${#methods[@]} -eq 0 ]] && methods=("${ALL[@]}")
for m in "${methods[@]}"; do
  if [[ ! -f "$ROOT/docker/$m.Dockerfile" ]]; then
    echo "error: no image for '$m'; choose from: ${ALL[*]}" >&2
    exit 2
  fi
done
if ! command -v docker >/dev/null 2>&1; then
  echo "error: the docker command is not installed; see https://docs.docker.com/engine/install/" >&2
  exit 1
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
read -r -a opts <<< "${DOCKER_BUILD_OPTS:-}"
for m in "${methods[@]}"; do
  echo "[build] ssl-$m (docker/$m.Dockerfile)" >&2
  DOCKER_BUILDKIT=1 docker build "${opts[@]}" -f "$ROOT/docker/$m.Dockerfile" \
    -t "ssl-$m" -t "ssl-$m:${version:-dev}" "$ROOT"
done
echo "[build] done: ${methods[*]/#/ssl-}" >&2
