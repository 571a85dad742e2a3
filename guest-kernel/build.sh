#!/usr/bin/env bash
# build.sh: builds moat's guest kernel (an uncompressed, PVH-bootable vmlinux)
# from Debian's linux-source-6.12 package, tinyconfig + fragments/*.conf +
# patches/*.patch, cached under ${MOAT_CACHE_DIR:-/var/cache/moat}/kernel/.
#
# usage: build.sh [--variant NAME] [--print-path]
#   (no option)   build if needed; print the vmlinux path as the last (and
#                 only) line of stdout. Progress goes to stderr.
#   --print-path  print the cached vmlinux path without building;
#                 exit 1 if it has not been built.
#   --variant NAME
#                 default: patches/*.patch only (every QEMU guest, hardware
#                 KVM). pvm: also patches/pvm/*.patch, for PVM-backed
#                 /dev/kvm hosts (see patches/README.md); its own source
#                 tree and cache key, so the default kernel is untouched.
#
# environment:
#   MOAT_CACHE_DIR        cache root (default /var/cache/moat); the kernel
#                         lives in $MOAT_CACHE_DIR/kernel/<key>/vmlinux
#   MOAT_KERNEL_JOBS      make -j (default: nproc)
#   MOAT_KERNEL_VERBOSE   1: make's output on stderr instead of a log file
#   MOAT_KERNEL_VARIANT   the variant when --variant is not given
#
# The cache key is the sha256 of the installed package version, the
# fragments, the patches and this script. The source is extracted once per
# package version into <root>/src-<version>/ and reused, so a changed
# fragment rebuilds incrementally.
set -euo pipefail

PKG=linux-source-6.12
ARCH=x86_64
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
root="${MOAT_CACHE_DIR:-/var/cache/moat}/kernel"

# stdout carries only the final path: keep the real stdout on fd 3, and send
# everything else (our messages, make, tar, apt) to stderr.
exec 3>&1 1>&2

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { printf 'guest-kernel: error: %s\n' "$*" >&2; exit 1; }

print_path=0
variant=${MOAT_KERNEL_VARIANT:-default}
want_variant=0
for arg in "$@"; do
    if [[ $want_variant -eq 1 ]]; then
        variant=$arg
        want_variant=0
        continue
    fi
    case $arg in
        --print-path) print_path=1 ;;
        --variant) want_variant=1 ;;
        --variant=*) variant=${arg#--variant=} ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$self" >&3
            exit 0
            ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
[[ $want_variant -eq 0 ]] || die "--variant needs a name (default or pvm)"
case $variant in
    default | pvm) ;;
    *) die "unknown variant '$variant' (default or pvm)" ;;
esac

pkg_version() {
    dpkg-query -W -f='${Status} ${Version}\n' "$PKG" 2>/dev/null |
        awk '$1 == "install" && $2 == "ok" && $3 == "installed" { print $4 }'
}

shopt -s nullglob
fragments=("$here"/fragments/*.conf)
patches=("$here"/patches/*.patch)
if [[ $variant != default ]]; then
    variant_patches=("$here/patches/$variant"/*.patch)
    [[ ${#variant_patches[@]} -gt 0 ]] || die "no patches in $here/patches/$variant"
    patches+=("${variant_patches[@]}")
fi
shopt -u nullglob
[[ ${#fragments[@]} -gt 0 ]] || die "no fragments in $here/fragments"

cache_key() {
    {
        printf 'package %s %s\n' "$PKG" "$1"
        # The default variant's key has no variant line.
        [[ $variant == default ]] || printf 'variant %s\n' "$variant"
        local f
        for f in "${fragments[@]}" "${patches[@]}" "$self"; do
            # Name and length before the content, so that no two different
            # sets of files can hash the same.
            printf '\nfile %s %s\n' "${f#"$here"/}" "$(wc -c <"$f")"
            cat "$f"
        done
    } | sha256sum | cut -d' ' -f1
}

version=$(pkg_version)
if [[ -z $version ]]; then
    if [[ $print_path -eq 1 ]]; then
        log "$PKG is not installed, so nothing is built"
        exit 1
    fi
    log "installing $PKG"
    [[ $(id -u) -eq 0 ]] || die "$PKG is not installed; run as root or: apt-get install $PKG"
    apt-get install -y --no-install-recommends "$PKG" ||
        { apt-get update && apt-get install -y --no-install-recommends "$PKG"; } ||
        die "could not install $PKG"
    version=$(pkg_version)
    [[ -n $version ]] || die "$PKG still not installed"
fi

key=$(cache_key "$version")
out="$root/$key"

if [[ -f $out/vmlinux ]]; then
    echo "$out/vmlinux" >&3
    exit 0
fi
if [[ $print_path -eq 1 ]]; then
    log "not built yet: $out/vmlinux (run $self)"
    echo "$out/vmlinux" >&3
    exit 1
fi

# ---------------------------------------------------------------------------
# Cold path: build.
start=$(date +%s)
phase() { log "[$1/6] $2 ($(($(date +%s) - start))s)"; }

missing=()
for tool in make gcc ld bc flex bison perl xz sha256sum flock patch; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -e /usr/include/gelf.h ]] || missing+=("libelf-dev (gelf.h)")
[[ -e /usr/include/openssl/ssl.h ]] || missing+=("libssl-dev (openssl/ssl.h)")
if [[ ${#missing[@]} -gt 0 ]]; then
    die "missing build tools: ${missing[*]} (apt-get install build-essential bc flex bison libelf-dev libssl-dev xz-utils patch)"
fi

mkdir -p "$root" 2>/dev/null || die "cannot create $root (set MOAT_CACHE_DIR to a writable directory)"
exec 9>"$root/.lock"
if ! flock -n 9; then
    log "another build holds $root/.lock; waiting"
    flock 9
fi
# Someone else may have built it while we waited.
if [[ -f $out/vmlinux ]]; then
    echo "$out/vmlinux" >&3
    exit 0
fi

jobs=${MOAT_KERNEL_JOBS:-$(nproc)}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "MOAT_KERNEL_JOBS must be a positive integer, not '$jobs'"

# 1. Source, extracted once per package version (and variant: a variant's tree
# starts as a copy of the default one when that exists, built objects and
# timestamps included, so that only what its patches touch is rebuilt).
default_src="$root/src-${version//[^A-Za-z0-9._+-]/_}"
src=$default_src
[[ $variant == default ]] || src="$default_src-$variant"
if [[ ! -f $src/.moat-extracted && $src != "$default_src" && -f $default_src/.moat-extracted ]]; then
    phase 1 "copying $default_src into $src"
    rm -rf "$src" "$src.tmp"
    cp -a "$default_src" "$src.tmp"
    mv -T "$src.tmp" "$src"
elif [[ ! -f $src/.moat-extracted ]]; then
    tarball=/usr/src/$PKG.tar.xz
    [[ -f $tarball ]] || tarball=$(dpkg -L "$PKG" | grep -m1 '\.tar\.xz$' || true)
    [[ -f $tarball ]] || die "no source tarball in package $PKG"
    phase 1 "extracting $tarball into $src"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
    : >"$src.tmp/.moat-extracted"
    mv -T "$src.tmp" "$src"
else
    phase 1 "reusing source $src"
fi
cd "$src"
mk() { make ARCH=$ARCH "$@"; }

# 2. Patches. The tree is shared by every build of this source version, so
# the patches applied last time are reverted first when the set changes;
# a copy of each applied patch is kept in .moat-patches/ for that.
# A patch's name in the series: its path under patches/ with / as __
# (the default variant's are plain file names).
series_name() { local n=${1#"$here"/patches/}; printf '%s' "${n//\//__}"; }
want_patches=$(for p in "${patches[@]}"; do printf '%s %s\n' "$(sha256sum <"$p" | cut -c1-64)" "$(series_name "$p")"; done)
have_patches=$(cat .moat-patches/series 2>/dev/null || true)
if [[ $want_patches != "$have_patches" ]]; then
    phase 2 "patches changed: reverting the old set, applying ${#patches[@]}"
    if [[ -n $have_patches ]]; then
        tac .moat-patches/series | while read -r _ name; do
            log "  reverting $name"
            patch -p1 -R --forward --no-backup-if-mismatch <".moat-patches/$name" >&2 ||
                die "could not revert $name; remove $src to start from clean source"
        done
    fi
    rm -rf .moat-patches
    mkdir -p .moat-patches
    : >.moat-patches/series
    for p in "${patches[@]}"; do
        name=$(series_name "$p")
        log "  applying $name"
        patch -p1 --forward --no-backup-if-mismatch <"$p" >&2 ||
            die "patch $name does not apply to $PKG $version; remove $src to start from clean source"
        cp "$p" ".moat-patches/$name"
        printf '%s %s\n' "$(sha256sum <"$p" | cut -c1-64)" "$name" >>.moat-patches/series
    done
else
    phase 2 "patches: ${#patches[@]} (unchanged)"
fi

# 3. Configuration: tinyconfig, the fragments over it, olddefconfig.
phase 3 "configuring: tinyconfig + ${#fragments[@]} fragments"
buildlog="$src/.moat-build.log"
: >"$buildlog"
[[ -f .config ]] && cp -p .config .config.moat-prev
{
    mk tinyconfig
    scripts/kconfig/merge_config.sh -m -O "$src" .config "${fragments[@]}"
    mk olddefconfig
} >>"$buildlog" 2>&1 || { tail -n 40 "$buildlog" >&2; die "configuration failed (log: $buildlog)"; }
# Unchanged config: keep its old timestamp so make does not redo the config step.
if [[ -f .config.moat-prev ]] && cmp -s .config .config.moat-prev; then
    touch -r .config.moat-prev .config
fi
rm -f .config.moat-prev

# 4. Every option in the fragments must have survived (a missing dependency
# makes Kconfig drop an option silently).
phase 4 "verifying the configuration against the fragments"
"$here/check-config.sh" .config "${fragments[@]}" ||
    die "the fragments ask for options the final .config lacks (listed above): add their dependencies to the fragments"

# 5. Build.
phase 5 "building vmlinux with make -j$jobs (log: $buildlog)"
if [[ ${MOAT_KERNEL_VERBOSE:-0} == 1 ]]; then
    mk -j"$jobs" vmlinux >&2 || die "make vmlinux failed"
else
    mk -j"$jobs" vmlinux >>"$buildlog" 2>&1 &
    make_pid=$!
    while kill -0 "$make_pid" 2>/dev/null; do
        for _ in $(seq 15); do
            sleep 1
            kill -0 "$make_pid" 2>/dev/null || break
        done
        kill -0 "$make_pid" 2>/dev/null || break
        last=$(grep -E '^  [A-Z]+' "$buildlog" | tail -n 1 | sed 's/^ *//' || true)
        log "  ... $(($(date +%s) - start))s, $(grep -cE '^  (CC|AS|LD|AR)' "$buildlog" || true) steps, at: ${last:-starting}"
    done
    if ! wait "$make_pid"; then
        tail -n 60 "$buildlog" >&2
        die "make vmlinux failed (log: $buildlog)"
    fi
fi
[[ -f vmlinux ]] || die "make succeeded but produced no vmlinux"

# 6. Install atomically: the directory appears with vmlinux and .config in it,
# or not at all.
phase 6 "installing into $out"
tmp=$(mktemp -d "$root/.tmp-$key.XXXXXX")
cp vmlinux "$tmp/vmlinux"
cp .config "$tmp/.config"
{
    printf 'package: %s %s\n' "$PKG" "$version"
    printf 'kernel: %s\n' "$(cat include/config/kernel.release 2>/dev/null || echo unknown)"
    printf 'key: %s\n' "$key"
    printf 'variant: %s\n' "$variant"
    printf 'fragments: %s\n' "$(cd "$here/fragments" && echo *.conf)"
    printf 'patches: %s\n' "${#patches[@]}"
    printf 'built: %s in %ss\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(($(date +%s) - start))"
} >"$tmp/build-info"
chmod 0755 "$tmp"
chmod 0644 "$tmp/vmlinux" "$tmp/.config" "$tmp/build-info"
rm -rf "$out"
mv -T "$tmp" "$out"
log "done in $(($(date +%s) - start))s: $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1))"
echo "$out/vmlinux" >&3
