"""A small line plot as PNG with Pillow (a Streamlit dependency), so benchmarks need no plotting stack."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def line_plot(path: str, series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
              hline: tuple[float, str] | None = None, size=(900, 520)) -> str:
    w, h = size
    left, right, top, bottom = 80, 30, 50, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts] + ([hline[0]] if hline else [])
    x0, x1 = 0.0, max(xs) * 1.05
    y0, y1 = 0.0, max(ys) * 1.15
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    d.text((left, 15), title, fill="black", font=font)
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        d.line([(left - 4, py(yv)), (w - right, py(yv))], fill=(230, 230, 230))
        d.text((8, py(yv) - 6), f"{yv:,.0f}", fill="black", font=font)
        xv = x0 + (x1 - x0) * i / 5
        d.text((px(xv) - 15, h - bottom + 8), f"{xv:,.0f}", fill="black", font=font)
    d.text((w // 2 - 60, h - 25), xlabel, fill="black", font=font)
    d.text((8, top - 20), ylabel, fill="black", font=font)
    if hline:
        d.line([(left, py(hline[0])), (w - right, py(hline[0]))], fill=(200, 0, 0), width=1)
        d.text((w - right - 160, py(hline[0]) - 14), hline[1], fill=(200, 0, 0), font=font)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189)]
    for i, (name, pts) in enumerate(series.items()):
        c = colours[i % len(colours)]
        pts = sorted(pts)
        d.line([(px(x), py(y)) for x, y in pts], fill=c, width=3)
        for x, y in pts:
            d.ellipse([px(x) - 4, py(y) - 4, px(x) + 4, py(y) + 4], fill=c)
        d.text((left + 20, top + 5 + 16 * i), f"- {name}", fill=c, font=font)
    img.save(path)
    return path
