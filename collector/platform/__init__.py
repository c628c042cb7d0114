"""The platform every layer stands on: settings, database, models, storage, migrations."""
