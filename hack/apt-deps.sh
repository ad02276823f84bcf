#!/usr/bin/env bash
# Installs the Debian packages the tests use that a new machine may lack:
# containerd and runc (the image test imports and runs an image with
# them), systemd (systemd-analyze verifies the units), chromium (the
# dashboard's browser test, e2e/dashboard, and hack/dashbench). Nothing is done
# when they are all there; otherwise apt-get update runs once first.
# Needs root; without it, says what to install and fails.
set -euo pipefail

want=(containerd runc systemd chromium)
missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	echo "apt-deps: missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "apt-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
