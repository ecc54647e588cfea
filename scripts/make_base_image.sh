#!/usr/bin/env bash
# A local stand-in for python:3.11-slim where no container registry can be reached: debootstrap a
# minimal Debian bookworm with python 3.11 (venv, ensurepip, CA certificates) and commit it as a
# local buildah image, to be passed to the Dockerfile as PYTHON_IMAGE.
#
#   scripts/make_base_image.sh [IMAGE]        # default IMAGE: localhost/recguard-base:bookworm
#   buildah bud --build-arg PYTHON_IMAGE=localhost/recguard-base:bookworm -t recguard .
#
# Needs root, debootstrap and buildah (apt-get install -y debootstrap buildah). The Debian mirror is
# the one this machine's apt already uses (DEBIAN_MIRROR overrides it). An image of that name that
# already exists is kept (REBUILD=1 makes it again). Prints the image name on its last line.
set -euo pipefail

IMAGE=${1:-localhost/recguard-base:bookworm}

if [[ -z "${REBUILD:-}" ]] && buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE exists (REBUILD=1 to make it again)" >&2
    echo "$IMAGE"
    exit 0
fi
for tool in debootstrap buildah; do
    command -v "$tool" >/dev/null || { echo "make_base_image: $tool not found (apt-get install -y $tool)" >&2; exit 2; }
done

mirror=${DEBIAN_MIRROR:-}
if [[ -z "$mirror" ]]; then
    # The first Debian URI of apt's own sources (deb822 or one-line form).
    mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
             | grep -E '/debian/?$|/debian ' | grep -v security | head -1 \
             | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//' || true)
fi
[[ -n "$mirror" ]] || { echo "make_base_image: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 2; }

root=$(mktemp -d /tmp/recguard-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase: dpkg, apt and essential only. python-is-python3 gives `python`, as the slim image has it.
debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >&2
# What an image never needs: apt's lists and downloaded packages, documentation, man pages, locales.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
       "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/* "$root"/tmp/*

# The certificate authorities this machine trusts on top of Debian's (a network that inspects TLS has
# one): without them pip in a build cannot reach the package index. pip reads its own bundle, not the
# system's, unless PIP_CERT points there.
env=(--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8)
shopt -s nullglob
local_cas=(/usr/local/share/ca-certificates/*.crt)
if (( ${#local_cas[@]} )); then
    cp "${local_cas[@]}" "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
    env+=(--env PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi

container=$(buildah from scratch)
buildah add "$container" "$root" / >/dev/null
buildah config "${env[@]}" --cmd '["python3"]' "$container"
buildah commit --rm "$container" "$IMAGE" >&2
echo "$IMAGE"
