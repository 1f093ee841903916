#!/bin/sh
# Lays out under OUT (the image's root) the files of the `nft` command and the libraries it
# needs beyond debian:bookworm-slim, taken from the packages installed where this runs (a
# Debian 12: the Dockerfile's build stage, or the test machine). The gateway programs its
# netfilter table with `nft -f -` (flow offload); without it, it runs the proxy dataplane.
#
#   docker/nft-files.sh OUT
#
# Only the program and its shared libraries: no configuration (/etc/nftables.conf), no
# systemd unit, no documentation. Fails when a package is not installed.
set -eu

out=${1:?usage: nft-files.sh OUT}
# nftables and its libraries; libc6, libgmp10, libtinfo6 and libmd0 are in the base image.
packages="nftables libnftables1 libnftnl11 libmnl0 libxtables12 libjansson4 libedit2 libbsd0"

for pkg in $packages; do
  dpkg-query -L "$pkg" | while read -r path; do
    case "$path" in
      /usr/sbin/nft | /usr/lib/*-linux-gnu/*.so.*)
        mkdir -p "$out$(dirname "$path")"
        cp -a "$path" "$out$path"
        ;;
    esac
  done
done
# Every library nft loads resolves inside OUT or the base image (checked by the container
# test, which runs `nft --version` in the image).
test -x "$out/usr/sbin/nft"
