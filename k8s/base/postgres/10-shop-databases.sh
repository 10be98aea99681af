#!/bin/bash
# Run once by the image's docker-entrypoint.sh, on an empty data directory, as the
# superuser over the local socket: for each service with a database, a login role named
# after it (password from Secret <service>-database, key password, through the env) that
# owns database shop_<service> (its migrations run as it at start) and nothing else.
# Nobody else may connect to those databases, nor to the maintenance ones.
#
# A service added later (or a data directory made before this script changed) needs the
# same statements by hand: this script never runs again on an initialised volume.
set -euo pipefail

create() {
  local service=$1 variable=$2
  if [ -z "${!variable:-}" ]; then
    echo "10-shop-databases.sh: $variable is empty (Secret $service-database, key password)" >&2
    exit 1
  fi
  # The password reaches psql through its environment (\getenv), not its command line.
  SHOP_ROLE_PASSWORD="${!variable}" psql -v ON_ERROR_STOP=1 --no-psqlrc \
    --username "$POSTGRES_USER" --dbname postgres \
    --set=role="$service" --set=db="shop_$service" <<'SQL'
\getenv password SHOP_ROLE_PASSWORD
CREATE ROLE :"role" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"db" OWNER :"role";
REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
SQL
  echo "10-shop-databases.sh: role $service owns database shop_$service"
}

create users USERS_DB_PASSWORD
create catalog CATALOG_DB_PASSWORD
create inventory INVENTORY_DB_PASSWORD
create orders ORDERS_DB_PASSWORD
create payments PAYMENTS_DB_PASSWORD
create notifications NOTIFICATIONS_DB_PASSWORD
create analytics ANALYTICS_DB_PASSWORD

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'SQL'
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;
SQL
