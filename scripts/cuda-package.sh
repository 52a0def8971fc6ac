#!/usr/bin/env bash
# Packages the CUDA edition's worker (staged by scripts/cuda-worker.sh) as freezetune-cuda .deb and .rpm packages
# of their own, installed beside the CPU app and found by it:
#   /usr/lib/freezetune-cuda/freezetune-cuda      the worker (RPATH $ORIGIN/lib)
#   /usr/lib/freezetune-cuda/lib/                  NVIDIA's CUDA 13 libraries (cudart, cublas, cublasLt, curand)
#   /usr/bin/freezetune-cuda                       a link, so the CUDA CLI is on PATH too
#   /usr/share/doc/freezetune-cuda/                NVIDIA's licence texts
# The driver (libcuda.so.1, R580 or newer) is not a dependency: the app starts without it and says why CUDA is
# missing. Both are zstd-compressed: xz took ten minutes a package on two cores for a 10% smaller file, and the
# glibc 2.34 the worker needs already rules out the distributions whose dpkg cannot read zstd (Debian 11).
# Usage: bash scripts/cuda-package.sh STAGED_DIR OUT_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STAGED="${1:?staged worker folder (scripts/cuda-worker.sh)}"
OUT="${2:?output folder}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
test -x "$STAGED/freezetune-cuda" || { echo "no worker in $STAGED: run scripts/cuda-worker.sh first" >&2; exit 1; }
mkdir -p "$OUT"
WORK="$(mktemp -d /var/tmp/freezetune-cuda-pkg.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

tree() { # the installed file tree under $1
  mkdir -p "$1/usr/lib/freezetune-cuda" "$1/usr/bin" "$1/usr/share/doc/freezetune-cuda"
  cp -a "$STAGED/freezetune-cuda" "$STAGED/lib" "$1/usr/lib/freezetune-cuda/"
  ln -s ../lib/freezetune-cuda/freezetune-cuda "$1/usr/bin/freezetune-cuda"
  cp "$STAGED"/licenses/* "$1/usr/share/doc/freezetune-cuda/"
  cat >"$1/usr/share/doc/freezetune-cuda/README" <<TXT
FreezeTune CUDA edition: the worker that trains on NVIDIA GPUs, for the FreezeTune app and as a CLI
(freezetune-cuda). It needs an NVIDIA driver R580 or newer and a GPU of compute capability 8.0 or newer.
The CUDA libraries in /usr/lib/freezetune-cuda/lib are NVIDIA's, redistributed under the licences in this folder.
TXT
}

# .deb
DEB_ROOT="$WORK/deb"
tree "$DEB_ROOT"
mkdir -p "$DEB_ROOT/DEBIAN"
SIZE_KB="$(du -sk "$DEB_ROOT/usr" | cut -f1)"
cat >"$DEB_ROOT/DEBIAN/control" <<CTL
Package: freezetune-cuda
Version: $VERSION
Architecture: amd64
Maintainer: FreezeTune developers <dev@freezetune.dev>
Installed-Size: $SIZE_KB
Depends: libc6 (>= 2.34), libgcc-s1, libstdc++6, libdbus-1-3
Recommends: freeze-tune
Section: devel
Priority: optional
Homepage: https://freezetune.dev
Description: FreezeTune CUDA edition (training worker for NVIDIA GPUs)
 Trains with FreezeTune on NVIDIA GPUs (CUDA 13; driver R580 or newer). The FreezeTune app finds it and
 lists the GPUs; it also works alone as the freezetune-cuda command. Ships NVIDIA's CUDA runtime libraries
 (cudart, cuBLAS, cuBLASLt, cuRAND) in a private folder.
CTL
DEB="$OUT/freezetune-cuda_${VERSION}_amd64.deb"
dpkg-deb --root-owner-group -Zzstd -z9 --build "$DEB_ROOT" "$DEB" >&2

# .rpm (rpmbuild from Debian's rpm package when this machine lacks it)
if ! command -v rpmbuild >/dev/null; then
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rpm >&2
fi
RPM_TOP="$WORK/rpm"
mkdir -p "$RPM_TOP"/{BUILD,RPMS,SPECS,BUILDROOT}
tree "$RPM_TOP/tree"
cat >"$RPM_TOP/SPECS/freezetune-cuda.spec" <<SPEC
Name: freezetune-cuda
Version: $VERSION
Release: 1
Summary: FreezeTune CUDA edition (training worker for NVIDIA GPUs)
License: Apache-2.0 and NVIDIA CUDA EULA (bundled libraries)
URL: https://freezetune.dev
# The driver's libcuda.so.1 must not become a requirement: without it the app still starts and trains on the CPU.
AutoReqProv: no
Requires: glibc >= 2.34, libstdc++, dbus-libs
%global debug_package %{nil}
%global __strip /bin/true
%global __brp_strip /bin/true
%global _build_id_links none
%global _binary_payload w9T.zstdio
%description
Trains with FreezeTune on NVIDIA GPUs (CUDA 13; driver R580 or newer). Ships NVIDIA's CUDA runtime libraries in a
private folder.
%install
cp -a $RPM_TOP/tree/. %{buildroot}/
%files
/usr/lib/freezetune-cuda
/usr/bin/freezetune-cuda
%doc /usr/share/doc/freezetune-cuda
SPEC
rpmbuild --quiet --define "_topdir $RPM_TOP" -bb "$RPM_TOP/SPECS/freezetune-cuda.spec" >&2
cp "$RPM_TOP"/RPMS/*/freezetune-cuda-*.rpm "$OUT/"
ls -l "$OUT" >&2
echo "packages: $DEB ($(du -h "$DEB" | cut -f1)); $(ls "$OUT"/freezetune-cuda-*.rpm) ($(du -h "$OUT"/freezetune-cuda-*.rpm | cut -f1))" >&2
