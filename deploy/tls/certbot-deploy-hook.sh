#!/bin/sh
# certbot deploy hook for rocketchat-shim's [server.tls] pair: copies the renewed certificate
# and key where the shim reads them, then reloads it (SIGHUP). New connections get the new pair;
# open ones keep theirs. If the pair does not load, the shim logs why and keeps the old one
# (rcshim_config_reloads_failed_total +1), and `systemctl reload` fails because ExecReload runs
# `rocketchat-shim check` first.
#
#   install -m 0755 deploy/tls/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/rocketchat-shim
#   groupadd --system rocketchat-shim-tls      # the group the service reads the key with
#   install -D -m 0644 deploy/tls/rocketchat-shim-tls.conf \
#       /etc/systemd/system/rocketchat-shim.service.d/tls.conf && systemctl daemon-reload
#   certbot certonly --standalone -d chat.example.org   # or your usual authenticator
#   RENEWED_LINEAGE=/etc/letsencrypt/live/chat.example.org sh /etc/letsencrypt/renewal-hooks/deploy/rocketchat-shim
#
# certbot sets RENEWED_LINEAGE to the live directory of the renewed certificate.
set -eu
src=${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE}
dst=/etc/rocketchat-shim/tls
install -d -m 0750 -g rocketchat-shim-tls "$dst"
# Write both files next to their final names, then rename: the shim never reads half a file.
install -m 0644 "$src/fullchain.pem" "$dst/.fullchain.pem.new"
install -m 0640 -g rocketchat-shim-tls "$src/privkey.pem" "$dst/.privkey.pem.new"
mv -f "$dst/.fullchain.pem.new" "$dst/fullchain.pem"
mv -f "$dst/.privkey.pem.new" "$dst/privkey.pem"
systemctl reload rocketchat-shim
