"""Deterministic, realistic car-shopping journeys for demos, tests and benchmarks.

Each user is generated from its own random stream seeded by (seed, index), so
user 17 is the same whether 100 or 100,000 users are generated.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .extractors import BehaviorRecord

START = datetime(2024, 6, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai"))

# (brand, model, price in 10k CNY)
MODELS = [
    ("比亚迪", "汉EV", 21),
    ("比亚迪", "宋PLUS DM-i", 16),
    ("比亚迪", "海豹", 19),
    ("特斯拉", "Model 3", 24),
    ("特斯拉", "Model Y", 26),
    ("小鹏", "P7", 22),
    ("理想", "L7", 32),
    ("蔚来", "ET5", 30),
    ("大众", "ID.4", 17),
    ("大众", "帕萨特", 20),
    ("丰田", "凯美瑞", 19),
    ("丰田", "RAV4荣放", 18),
    ("本田", "雅阁", 18),
    ("本田", "CR-V", 19),
    ("宝马", "3系", 30),
    ("奥迪", "A4L", 32),
    ("奔驰", "C级", 34),
    ("吉利", "星越L", 15),
    ("长安", "UNI-V", 12),
    ("哈弗", "H6", 11),
]
AUTO_APPS = ["汽车之家", "懂车帝", "易车", "太平洋汽车"]
DAILY_APPS = ["微信", "抖音", "美团", "高德地图", "大众点评", "小红书", "淘宝", "网易云音乐"]
MEDIA = ["抖音", "今日头条", "微信朋友圈", "小红书", "百度"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "南京", "武汉", "西安", "苏州"]
DISTRICTS = ["朝阳", "海淀", "浦东", "天河", "南山", "西湖", "高新", "江宁", "江汉", "雁塔"]
INTERESTS = ["汽车", "旅行", "美食", "健身", "数码", "摄影", "户外", "亲子", "音乐", "游戏"]
OCCUPATIONS = ["工程师", "教师", "销售", "医生", "设计师", "公务员", "自由职业", "财务"]
LEISURE_PLACES = [
    "星巴克({d}店)",
    "海底捞({d}店)",
    "川味小馆({d})",
    "万达广场({d})",
    "奥森车友会俱乐部",
    "{d}健身中心",
    "{d}电影院",
    "自驾游俱乐部({d})",
    "{d}公园",
]
SEARCH_TEMPLATES = [
    "{price}万 SUV 推荐",
    "{model} 怎么样",
    "{model} 落地价",
    "{model} 续航",
    "{brand} 4S店 {city}",
    "{model} 和 {other} 哪个好",
    "新能源车 补贴 {city}",
    "{model} 试驾",
]


@dataclass(frozen=True)
class SampleUser:
    user_id: str
    profile: dict[str, Any]
    behaviors: list[BehaviorRecord]


def sample_user_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:07d}"


def sample_user(index: int, seed: int = 0, prefix: str = "u") -> SampleUser:
    rng = random.Random(f"{seed}:{index}")
    user_id = sample_user_id(prefix, index)
    city = rng.choice(CITIES)
    budget = rng.choice([10, 15, 20, 25, 30, 35])
    candidates = sorted(MODELS, key=lambda m: (abs(m[2] - budget), rng.random()))[:6]
    shortlist = rng.sample(candidates, k=rng.randint(2, 4))
    stage = rng.choices(["browse", "compare", "visit", "cart", "purchase"], [45, 25, 16, 8, 6])[0]
    profile = {
        "age": rng.randint(22, 55),
        "gender": rng.choice(["男", "女"]),
        "city": city,
        "occupation": rng.choice(OCCUPATIONS),
        "interests": rng.sample(INTERESTS, k=rng.randint(2, 4)),
        "budget": f"{budget}-{budget + 5}万",
        "purchase_intent": round(
            {"browse": 0.2, "compare": 0.4, "visit": 0.6, "cart": 0.8, "purchase": 0.9}[stage]
            + rng.uniform(-0.1, 0.1),
            2,
        ),
        "has_car": rng.random() < 0.4,
    }
    journey = _Journey(rng, user_id, city, shortlist, stage)
    return SampleUser(user_id, profile, journey.behaviors(rng.randint(60, 120)))


class _Journey:
    def __init__(self, rng: random.Random, user_id: str, city: str, shortlist, stage: str):
        self.rng, self.user_id, self.city, self.shortlist, self.stage = rng, user_id, city, shortlist, stage
        self.district = rng.choice(DISTRICTS)
        self.now = START + timedelta(days=rng.randint(0, 60), hours=rng.randint(0, 12))
        self.rows: list[BehaviorRecord] = []

    def add(
        self, action: str, *, item="", app="", media="", place="", duration=None, gap=(20, 300), **extra
    ) -> None:
        self.now += timedelta(seconds=self.rng.randint(*gap))
        self.rows.append(
            BehaviorRecord(self.user_id, action, self.now, item, app, media, place, duration, extra)
        )

    def behaviors(self, target: int) -> list[BehaviorRecord]:
        rng = self.rng
        while len(self.rows) < target:
            self.now += timedelta(hours=rng.randint(3, 30))
            session = rng.choices(["research", "daily", "leisure", "ad"], [45, 30, 15, 10])[0]
            getattr(self, f"_{session}")()
        self.rows = self.rows[:target]
        self._finale()
        return self.rows

    def _model(self):
        return self.rng.choice(self.shortlist)

    def _research(self) -> None:
        """An auto-app session: search, then page after page on one model, maybe a comparison."""
        rng = self.rng
        app = rng.choice(AUTO_APPS)
        brand, model, price = self._model()
        other = self._model()[1]
        keyword = rng.choice(SEARCH_TEMPLATES).format(
            price=price, model=model, brand=brand, city=self.city, other=other
        )
        self.add("app_use", item="首页", app=app, duration=rng.randint(30, 300))
        self.add("search", item=keyword, app=app, duration=rng.randint(5, 40), gap=(5, 60))
        self._browse_run(app, f"{brand} {model}", rng.randint(3, 9))
        if self.stage != "browse" and rng.random() < 0.6 and len(self.shortlist) > 1:
            self.add("compare", item=f"{model} vs {other}", app=app, duration=rng.randint(60, 600))
        if rng.random() < 0.4:
            self._browse_run(app, " ".join(self._model()[:2]), rng.randint(1, 5))

    def _browse_run(self, app: str, model: str, views: int) -> None:
        """Consecutive views of one model's pages (photos, specs, prices), minutes apart."""
        for _ in range(views):
            self.add("browse", item=model, app=app, duration=self.rng.randint(20, 400), gap=(30, 900))

    def _daily(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            self.add(
                "app_use",
                item="",
                app=self.rng.choice(DAILY_APPS),
                duration=self.rng.randint(30, 1800),
                gap=(60, 3600),
            )

    def _leisure(self) -> None:
        place = self.rng.choice(LEISURE_PLACES).format(d=self.district)
        self.add("visit", place=place, duration=self.rng.randint(1200, 7200), gap=(600, 7200))

    def _ad(self) -> None:
        brand, model, _ = self._model()
        self.add(
            "click",
            item=f"ad:{brand}{model}试驾",
            media=self.rng.choice(MEDIA),
            duration=self.rng.randint(3, 60),
            gap=(60, 1800),
        )

    def _finale(self) -> None:
        """The journey's deepest steps, in funnel order at the end."""
        rng = self.rng
        brand, model, price = self.shortlist[0]
        if self.stage in ("visit", "cart", "purchase"):
            for _ in range(rng.randint(1, 2)):
                self.add(
                    "visit",
                    place=f"{brand}4S店({self.district}店)",
                    duration=rng.randint(1800, 7200),
                    gap=(3600, 86400 * 3),
                )
        if self.stage in ("cart", "purchase"):
            self.add(
                "add_to_cart",
                item=f"{brand} {model}",
                app=rng.choice(AUTO_APPS),
                duration=rng.randint(30, 300),
                gap=(3600, 86400),
                price=5000,
            )
        if self.stage == "purchase":
            self.add(
                "purchase",
                item=f"{brand} {model}",
                place=f"{brand}4S店({self.district}店)",
                duration=rng.randint(3600, 10800),
                gap=(86400, 86400 * 7),
                price=price * 10000 + rng.randint(-2, 2) * 5000,
            )
