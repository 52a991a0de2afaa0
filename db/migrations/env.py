"""Alembic environment. The store is the caller's: db.migrate passes its connection (and URL) on the config. Only the
`alembic` command line (`make migration`, `alembic upgrade head` in a checkout) has no caller to ask, so there the
URL comes from geocurate's settings (GEOCURATE_DATABASE_URL or geocurate.toml)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from db.models import Base

config = context.config
if config.attributes.get("connection") is None and not config.get_main_option("sqlalchemy.url"):
    if config.cmd_opts is None:  # called from code that forgot to say which store
        raise RuntimeError("no store given to the migrations: use db.migrate.upgrade(url)")
    from geocurate.settings import get_settings

    config.set_main_option("sqlalchemy.url", get_settings().database_url.replace("%", "%%"))

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        connectable = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                         poolclass=pool.NullPool)
        with connectable.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
