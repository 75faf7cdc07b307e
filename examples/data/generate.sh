#!/usr/bin/env bash
# generate.sh DIR — write the sample mesh's product data under DIR/data/:
# deterministic synthetic rows (no real person), made with the sqlite3 CLI.
#   data/sales/orders.db            2,000 orders (emails, card numbers, regions)
#   data/sales/extracts/*.csv       a daily CSV export of the last 3 days
#   data/crm/customers.db           500 customers (names, emails, phones)
#   data/marketing/campaigns.db     daily revenue per campaign and region
# The paths match examples/mesh/*.yaml; the sidecar resolves them against
# its --data-root.  Existing files are replaced.
set -euo pipefail
root=${1:?usage: generate.sh DIR}
mkdir -p "$root/data/sales/extracts" "$root/data/crm" "$root/data/marketing"
rm -f "$root/data/sales/orders.db" "$root/data/crm/customers.db" \
    "$root/data/marketing/campaigns.db" "$root/data/sales/extracts/"*.csv

sqlite3 "$root/data/sales/orders.db" <<'SQL'
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_email TEXT,
    card_number TEXT,
    region TEXT,
    amount REAL,
    order_date TEXT
);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO orders
SELECT i,
       'customer' || (i % 500 + 1) || '@' ||
           CASE i % 3 WHEN 0 THEN 'example.com' WHEN 1 THEN 'example.org'
                      ELSE 'example.net' END,
       printf('4%03d%04d%04d%04d', i % 1000, (i * 7919) % 10000,
              (i * 104729) % 10000, (i * 31) % 10000),
       CASE i % 3 WHEN 0 THEN 'EU' WHEN 1 THEN 'US' ELSE 'APAC' END,
       round(10 + (i * 37 % 990) + (i % 100) / 100.0, 2),
       date('2026-11-23', '-' || (i % 89) || ' days')
FROM n;
SQL

for day in 2026-11-21 2026-11-22 2026-11-23; do
    sqlite3 -header -csv "$root/data/sales/orders.db" \
        "SELECT * FROM orders WHERE order_date = '$day' ORDER BY order_id" \
        >"$root/data/sales/extracts/orders-$day.csv"
done

sqlite3 "$root/data/crm/customers.db" <<'SQL'
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT,
    email TEXT,
    phone TEXT,
    country TEXT,
    segment TEXT
);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO customers
SELECT i,
       CASE i % 6 WHEN 0 THEN 'Ada' WHEN 1 THEN 'Grace' WHEN 2 THEN 'Alan'
                  WHEN 3 THEN 'Edsger' WHEN 4 THEN 'Barbara' ELSE 'Ken' END
           || ' Example' || i,
       'customer' || i || '@example.' ||
           CASE i % 3 WHEN 0 THEN 'com' WHEN 1 THEN 'org' ELSE 'net' END,
       printf('+1-555-%04d', i),
       CASE i % 5 WHEN 0 THEN 'DE' WHEN 1 THEN 'FR' WHEN 2 THEN 'US'
                  WHEN 3 THEN 'JP' ELSE 'BR' END,
       CASE i % 3 WHEN 0 THEN 'consumer' WHEN 1 THEN 'smb'
                  ELSE 'enterprise' END
FROM n;
SQL

sqlite3 "$root/data/marketing/campaigns.db" <<'SQL'
CREATE TABLE campaign_performance (
    campaign TEXT, region TEXT, day TEXT, orders INTEGER, revenue REAL
);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 89)
INSERT INTO campaign_performance
SELECT c.name, r.region, date('2026-11-23', '-' || n.i || ' days'),
       (n.i * 7 + length(c.name) * 3) % 40 + 5,
       round(((n.i * 7 + length(c.name) * 3) % 40 + 5) * 42.5, 2)
FROM n,
     (SELECT 'black-friday' AS name UNION ALL SELECT 'newsletter'
      UNION ALL SELECT 'search') AS c,
     (SELECT 'EU' AS region UNION ALL SELECT 'US'
      UNION ALL SELECT 'APAC') AS r;
SQL
echo "generate: sample data in $root/data"
