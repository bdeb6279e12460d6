#!/usr/bin/env bash
# Install the Debian font packages the synthetic renderer draws from (about 80 MB, Latin text faces of many
# styles: sans, serif, slab, mono, condensed, handwriting-like). Renders with more faces look more like real
# signs, which is what the shipped models and the quick start's real-benchmark rows depend on.
# Needs apt-get and root; anywhere else it says so and renders use the fonts already present (matplotlib's).
set -uo pipefail
FONT_PACKAGES=(fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-texgyre fonts-roboto-unhinted
  fonts-open-sans fonts-lato fonts-crosextra-carlito fonts-crosextra-caladea fonts-cantarell fonts-linuxlibertine
  fonts-ebgaramond fonts-comic-neue fonts-dejavu-extra fonts-hack fonts-go fonts-sil-gentium fonts-league-spartan
  fonts-anonymous-pro)
missing=()
for p in "${FONT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get > /dev/null || [ "$(id -u)" != 0 ]; then
  echo "note: fonts not installed (${missing[*]}): needs apt-get as root; rendering with the fonts present" >&2
  exit 0
fi
echo "installing ${#missing[@]} font package(s) with apt-get"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; } > /tmp/install_fonts.log 2>&1; then
  echo "note: apt-get could not install the fonts (see /tmp/install_fonts.log); rendering with the fonts present" >&2
fi
exit 0
