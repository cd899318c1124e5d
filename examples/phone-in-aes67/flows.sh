#!/usr/bin/env sh
# Creates the phone-in's two AES67 flows on a running gateway (stored in its database:
# run this once). Needs an admin token: TOKEN=$(telepatch token create --name ops --scope admin)
set -eu
cd "$(dirname "$0")"
API=${API:-http://127.0.0.1:8080}
for flow in studio.json returns.json; do
    curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' -d @"$flow" "$API/v1/nodes"
    echo
done
# What the console subscribes to (Dante Controller finds it by SAP as "Phone-in callers"):
curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$API/v1/flows/studio/sdp"
