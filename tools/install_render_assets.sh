#!/usr/bin/env bash
# Install what the synthetic renderer draws from, all offline-installable packages (nothing else is downloaded):
#   - Debian font packages (about 80 MB, Latin faces of many styles: sans, serif, slab, mono, condensed,
#     handwriting-like) and Debian background packages (photographs and paper textures, about 110 MB), with apt-get;
#   - the 100 Latin fonts and 4 photographs inside the trdg wheel on PyPI, unpacked into data/render_assets/
#     (the scene style's --font_dirs data/render_assets/fonts and its default texture folders read them).
# Without apt-get or root it says so and renders use what is present (matplotlib's fonts at least).
#   bash tools/install_render_assets.sh [PYTHON]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-${PYTHON:-python}}
PACKAGES=(fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-texgyre fonts-roboto-unhinted
  fonts-open-sans fonts-lato fonts-crosextra-carlito fonts-crosextra-caladea fonts-cantarell fonts-linuxlibertine
  fonts-ebgaramond fonts-comic-neue fonts-dejavu-extra fonts-hack fonts-go fonts-sil-gentium fonts-league-spartan
  fonts-anonymous-pro mate-backgrounds gnome-backgrounds mypaint-data-extras ukui-wallpapers)
TRDG=trdg==1.8.0
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get > /dev/null || [ "$(id -u)" != 0 ]; then
    echo "note: not installed (${missing[*]}): needs apt-get as root; rendering with what is present" >&2
  else
    echo "installing ${#missing[@]} Debian package(s) with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          "${missing[@]}"; } > /tmp/install_render_assets.log 2>&1; then
      echo "note: apt-get failed (see /tmp/install_render_assets.log); rendering with what is present" >&2
    fi
  fi
fi
if [ ! -f data/render_assets/done ]; then
  wheel_dir=$(mktemp -d)
  if "$PYTHON" -m pip download -q --no-deps --disable-pip-version-check -d "$wheel_dir" "$TRDG" > /dev/null 2>&1; then
    "$PYTHON" - "$wheel_dir"/trdg-*.whl <<'PY'
import sys, zipfile
from pathlib import Path
out = Path('data/render_assets')
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for member in wheel.namelist():
        if member.startswith('trdg/fonts/latin/') and member.lower().endswith(('.ttf', '.otf')):
            target = out / 'fonts' / Path(member).name
        elif member.startswith('trdg/images/') and member.lower().endswith(('.jpg', '.png')):
            target = out / 'images' / Path(member).name
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(member))
(out / 'done').write_text('trdg 1.8.0\n')
PY
  else
    echo "note: pip could not fetch $TRDG; rendering without its fonts and photographs" >&2
  fi
  rm -rf "$wheel_dir"
fi
exit 0
