"""Print, as JSON, the SQL that Pushbase runs for a view's first JSON page (literal values inlined).

Run with the product's Python (.venv/bin/python bench/pull/view_sql.py DB VIEW LIMIT): it builds the
query with Pushbase's own code (pushbase.views), so the plan the benchmark shows is the plan of the
query the server really runs. Reads only.
"""
from __future__ import annotations

import json
import sys


def main() -> None:
    db, view_name, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from pushbase.storage import open_store
    from pushbase.views import store as views

    store = open_store(db, upgrade=False)
    with store.read() as conn:
        view = views.get_view(store, view_name, conn)
        query = views.view_query(store, view, conn)
        select = query.select().limit(limit + 1)
        sql = str(select.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        print(json.dumps({"sql": sql, "table": query.table.name, "indexable_columns": query.indexable_columns()}))
    store.close()


if __name__ == "__main__":
    main()
