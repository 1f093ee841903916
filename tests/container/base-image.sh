#!/usr/bin/env bash
# Makes `FROM debian:bookworm-slim` resolve on a machine without an image registry:
# debootstraps a minimal Debian 12 (variant minbase) from the mirror apt is configured with,
# imports it into podman's storage as localhost/debian:bookworm-slim and tags it
# docker.io/library/debian:bookworm-slim. Does nothing when the image is already there, so
# the base is built once per machine and kept between test runs.
#
# Needs root, podman and debootstrap. Uses the podman options of the caller's environment
# (CONTAINERS_CONF); changes nothing but podman's image storage and a temporary directory.
set -euo pipefail

IMAGE=localhost/debian:bookworm-slim
ALIAS=docker.io/library/debian:bookworm-slim

if podman image exists "$ALIAS"; then
  exit 0
fi
if podman image exists "$IMAGE"; then
  podman tag "$IMAGE" "$ALIAS"
  exit 0
fi

# The mirror apt uses for the bookworm suite (deb822 or one-line sources, whichever is set).
mirror=$(apt-get indextargets --format '$(SITE) $(RELEASE)' 'Identifier: Packages' \
  | awk '$2 == "bookworm" { print $1; exit }')
if [ -z "$mirror" ]; then
  echo "base-image.sh: apt has no source for the bookworm suite; cannot debootstrap" >&2
  exit 1
fi

dir=$(mktemp -d /var/tmp/clusterway-bookworm.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo "base-image.sh: debootstrap --variant=minbase bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 || {
  tail -n 30 "$dir.log" >&2
  rm -f "$dir.log"
  exit 1
}
rm -f "$dir.log"
# What the official slim image leaves out as well: package lists, caches, docs.
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
  "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
tar --numeric-owner -C "$dir" -c . \
  | podman import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
podman tag "$IMAGE" "$ALIAS"
echo "base-image.sh: imported $IMAGE (tagged $ALIAS)" >&2
