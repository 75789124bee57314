"""The deploy step: create or upgrade convo's tables, once per release, before the workers start.

    DATABASE_URL=postgresql://app:secret@db/chat python migrate.py

It does what ``convo --db "$DATABASE_URL" db upgrade`` does. The app's workers
only check the schema at start-up, so a deploy that forgot this step fails
loudly at once, and no worker changes tables under the others.
"""

import os

from convo import Store


def main() -> None:
    url = os.environ.get("DATABASE_URL", "sqlite:///chatbot.db")
    with Store(url) as store:
        store.migrate()  # idempotent: a current schema is left as it is
        print(f"{store!r}: schema at {store.current_revision()}")  # the repr hides the password


if __name__ == "__main__":
    main()
