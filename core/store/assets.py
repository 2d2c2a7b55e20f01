"""The asset repository: the catalogue as the database holds it (synced from the asset files at start)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Table
from sqlalchemy import select as core_select
from sqlmodel import select

from core.assets import Asset
from core.models import utcnow
from core.store.base import Repository
from core.store.rows import storable
from core.store.tables import AssetRow

_ASSET: Table = AssetRow.__table__  # type: ignore[attr-defined]


class AssetRepository(Repository):
    """Assets: written only by the catalogue sync, read on every createJob and assets query."""

    async def sync_assets(self, assets: Sequence[Asset]) -> None:
        """Make the catalogue the truth: upsert every asset, deactivate the ones no longer listed."""
        now = utcnow()
        async with self.session() as s:
            existing = {r.id: r for r in (await s.exec(select(AssetRow))).all()}
            for asset in assets:
                row = existing.pop(asset.id, None) or AssetRow(
                    id=asset.id, version="", spec={}, updated_at=now
                )
                row.version, row.spec, row.active, row.updated_at = asset.version, asset.frozen(), True, now
                s.add(row)
            for row in existing.values():
                row.active = False
                s.add(row)
            await s.commit()

    async def list_assets(self, ids: Iterable[str] | None = None) -> list[Asset]:
        q = core_select(_ASSET.c.spec).where(_ASSET.c.active).order_by(_ASSET.c.id)
        if ids is not None:
            q = q.where(_ASSET.c.id.in_([i for i in ids if storable(i)]))
        return [Asset.model_validate(r.spec) for r in await self._rows(q)]

    async def get_asset(self, asset_id: str) -> Asset | None:
        found = await self.list_assets([asset_id])
        return found[0] if found else None
