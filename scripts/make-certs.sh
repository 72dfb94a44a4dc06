#!/usr/bin/env bash
# Make a throw-away certificate authority and a server certificate for 127.0.0.1 and
# localhost with Java's keytool only (no openssl needed), for a TLS broker or PostgreSQL
# in tests and local trials. Not for production: the CA key sits next to its certificate.
#
#   scripts/make-certs.sh DIR [STORE_PASSWORD]
#
# Writes into DIR:
#   ca.p12       the CA (PKCS12 keystore, alias "ca")
#   ca.pem       the CA certificate (PEM): ssl.ca.location for clients, sslrootcert for libpq
#   server.p12   the server key and its certificate chain (PKCS12, alias "server"):
#                ssl.keystore.location for a Kafka broker (ssl.keystore.type=PKCS12)
#   server.pem   the server certificate (PEM), signed by the CA
# STORE_PASSWORD (default "changeit") protects both keystores.
set -euo pipefail

[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
DIR="$1"
PASS="${2:-changeit}"
command -v keytool >/dev/null 2>&1 || { echo "make-certs: keytool not found: install a Java 17+ JDK/JRE" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"
rm -f ca.p12 ca.pem server.p12 server.pem server.csr
kt() { keytool -J-XX:+UseSerialGC -J-XX:TieredStopAtLevel=1 "$@"; }

kt -genkeypair -alias ca -keyalg RSA -keysize 2048 -validity 30 \
    -dname "CN=queuestream test CA" -ext bc:c \
    -keystore ca.p12 -storetype PKCS12 -storepass "$PASS" -keypass "$PASS"
kt -exportcert -rfc -alias ca -keystore ca.p12 -storepass "$PASS" -file ca.pem

kt -genkeypair -alias server -keyalg RSA -keysize 2048 -validity 30 -dname "CN=localhost" \
    -keystore server.p12 -storetype PKCS12 -storepass "$PASS" -keypass "$PASS"
kt -certreq -alias server -keystore server.p12 -storepass "$PASS" -file server.csr
kt -gencert -rfc -alias ca -keystore ca.p12 -storepass "$PASS" -validity 30 \
    -ext "SAN=dns:localhost,ip:127.0.0.1" -ext KU=digitalSignature,keyEncipherment -ext EKU=serverAuth \
    -infile server.csr -outfile server.pem
# the chain: the CA first, then the signed certificate replaces the self-signed one
kt -importcert -noprompt -alias ca -file ca.pem -keystore server.p12 -storepass "$PASS"
kt -importcert -noprompt -alias server -file server.pem -keystore server.p12 -storepass "$PASS"
rm -f server.csr
echo "make-certs: wrote $DIR/{ca.p12,ca.pem,server.p12,server.pem}"
