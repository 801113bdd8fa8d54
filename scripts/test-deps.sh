#!/usr/bin/env bash
# Installs the Debian packages the integration tests run against (a real
# Dovecot with Pigeonhole as the legacy server; mbsync, fetchmail, swaks and Python as
# clients; Postfix as the legacy MTA; Cyrus IMAP as a second legacy
# server), only when missing.
set -euo pipefail
need=()
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd dovecot-pop3d dovecot-lmtpd)
[ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
[ -x /usr/lib/dovecot/pop3 ] || need+=(dovecot-pop3d)
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
[ -e /usr/lib/dovecot/modules/lib90_sieve_plugin.so ] || need+=(dovecot-sieve) # Pigeonhole: the legacy users' Sieve filters
[ -x /usr/lib/dovecot/managesieve ] || need+=(dovecot-managesieved) # and their ManageSieve service
command -v mbsync >/dev/null 2>&1 || need+=(isync)
command -v fetchmail >/dev/null 2>&1 || need+=(fetchmail)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) # verifies the shipped unit
command -v prometheus >/dev/null 2>&1 || need+=(prometheus) # evaluates the dashboard and alerts
command -v chromium >/dev/null 2>&1 || need+=(chromium) # loads the status page
command -v postfix >/dev/null 2>&1 || need+=(postfix)
[ -x /usr/lib/cyrus/bin/master ] || need+=(cyrus-common) # a second legacy IMAP implementation (its imapd below)
command -v saslpasswd2 >/dev/null 2>&1 || need+=(sasl2-bin) # its users
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl) # swaks -tls
# Cyrus's imapd (package cyrus-imapd) conflicts with dovecot-imapd in
# Debian: it is unpacked into a private directory instead of installed.
cyrus_imapd=/opt/mailcapture-test/cyrus-imapd
cyrus_missing=0
[ -x "$cyrus_imapd/usr/lib/cyrus/bin/imapd" ] || cyrus_missing=1
if [ ${#need[@]} -eq 0 ] && [ $cyrus_missing -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing packages ${need[*]}; run as root or install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Postfix is installed unconfigured: the tests run private instances.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
if [ $cyrus_missing -eq 1 ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq cyrus-imapd 2>/dev/null)
  mkdir -p "$cyrus_imapd"
  dpkg-deb -x "$tmp"/cyrus-imapd_*.deb "$cyrus_imapd"
  rm -rf "$tmp"
fi
# The packages may start a system-wide Dovecot or Postfix; the tests run
# their own.
if command -v service >/dev/null 2>&1; then
  service dovecot stop >/dev/null 2>&1 || true
  service postfix stop >/dev/null 2>&1 || true
  service prometheus stop >/dev/null 2>&1 || true
  service cyrus-imapd stop >/dev/null 2>&1 || true
fi
