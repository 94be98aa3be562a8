#!/usr/bin/env bash
# The explorer's browser test drives Debian's Chromium and its driver: install them when missing
# and this machine can (root with apt-get); otherwise say so (that test then skips, saying why).
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver (the explorer's browser test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
    || echo "could not install chromium: the explorer's browser test will skip"
else
  echo "chromium and chromedriver are not installed (needs root and apt-get): the explorer's browser test will skip"
fi
exit 0
