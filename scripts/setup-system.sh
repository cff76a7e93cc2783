#!/usr/bin/env bash
# Installs what abliterate needs from the system on Debian 12 (bookworm): the Vulkan loader, Mesa's
# lavapipe software Vulkan driver from bookworm-backports (the version in bookworm itself is too old
# for Dawn), and Chromium for the browser page and its tests. Run as root; as another user it
# prints the commands instead.
set -euo pipefail

backports='deb http://deb.debian.org/debian bookworm-backports main'
list=/etc/apt/sources.list.d/bookworm-backports.list
packages=(libvulkan1)
backport_packages=(mesa-vulkan-drivers)
browser_packages=(chromium)

commands=(
  "grep -rqs '^deb .*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ || echo '$backports' > $list"
  "apt-get update"
  "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${packages[*]} ${browser_packages[*]}"
  "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t bookworm-backports ${backport_packages[*]}"
)

if [ "$(id -u)" -ne 0 ]; then
  echo "Not root: run these as root (or with sudo) to install the system packages:"
  printf '  %s\n' "${commands[@]}"
  exit 0
fi

if ! grep -qs 'bookworm' /etc/os-release; then
  echo "warning: this script is written for Debian 12 (bookworm); adapt the package names for your system" >&2
fi
for command in "${commands[@]}"; do
  echo "+ $command"
  bash -c "$command"
done

if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "Node.js 20 or newer is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
echo "System packages installed. Vulkan drivers: $(ls /usr/share/vulkan/icd.d/ 2>/dev/null | tr '\n' ' ')"
