#!/usr/bin/env python3
"""Regenerates the sample images in samples/ (committed; run only to change them).

Two network zones: `harbor` (cameras on a quay) and `plant` (an inspection line). The JPEGs carry
real EXIF: GPS position, DateTimeOriginal with its offset, camera make, model and serial.
Needs Pillow: pip install pillow.
"""
import math
import os
from PIL import Image, ImageDraw

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples")


def dms(value):
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = round(((value - d) * 60 - m) * 60, 2)
    return (float(d), float(m), s)


def scene(w, h, hue, seed):
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            t = y / h
            r = int(40 + 120 * t + 60 * math.sin((x + seed) / 23.0) ** 2)
            g = int(60 + 100 * (1 - t) * hue)
            b = int(120 + 100 * (1 - t))
            px[x, y] = (min(r, 255), min(g, 255), min(b, 255))
    d = ImageDraw.Draw(img)
    for i in range(5):
        x0 = (seed * 37 + i * 61) % (w - 60)
        y0 = h // 2 + (i * 13) % (h // 3)
        d.rectangle([x0, y0, x0 + 50, y0 + 30], fill=(200 - i * 20, 80 + i * 30, 40))
    d.ellipse([w - 70, 10, w - 20, 60], fill=(250, 220, 120))
    return img


def exif(lat, lon, when, offset, make, model, serial):
    e = Image.Exif()
    e[0x010F] = make
    e[0x0110] = model
    ifd = e.get_ifd(0x8769)
    ifd[0x9003] = when  # DateTimeOriginal
    ifd[0x9011] = offset  # OffsetTimeOriginal
    ifd[0xA431] = serial  # BodySerialNumber
    gps = e.get_ifd(0x8825)
    gps[1] = "N" if lat >= 0 else "S"
    gps[2] = dms(lat)
    gps[3] = "E" if lon >= 0 else "W"
    gps[4] = dms(lon)
    return e


def main():
    jpegs = [
        ("harbor/quay-east.jpg", 36.0671, 120.3826, "2026:11:20 08:15:30", "+08:00", "Hikvision", "DS-2CD2387", "HK-0042", 1),
        ("harbor/cranes/crane-07.jpg", 36.0702, 120.3911, "2026:11:21 14:02:11", "+08:00", "Axis", "P1468-LE", "AX-7781", 2),
        ("plant/line-3/weld-0001.jpg", 31.2304, 121.4737, "2026:11:22 23:59:59", "+08:00", "Basler", "acA2440", "BS-1203", 3),
    ]
    for path, lat, lon, when, off, make, model, serial, seed in jpegs:
        full = os.path.join(ROOT, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        scene(320, 200, 0.7, seed).save(full, "JPEG", quality=80, exif=exif(lat, lon, when, off, make, model, serial))
    png = os.path.join(ROOT, "plant/line-3/overview.png")
    scene(240, 160, 0.3, 9).save(png, "PNG", optimize=True)

    # Test fixtures for the EXIF edge cases (tests/fixtures/).
    fixtures = os.path.join(ROOT, "..", "tests", "fixtures")
    os.makedirs(fixtures, exist_ok=True)
    # No OffsetTimeOriginal, but a GPS clock (UTC) 8 hours behind the camera's.
    e = exif(31.2304, 121.4737, "2026:11:22 23:59:59", "+08:00", "Basler", "acA2440", "BS-1203")
    del e.get_ifd(0x8769)[0x9011]
    gps = e.get_ifd(0x8825)
    gps[7] = (15.0, 59.0, 59.0)  # GPSTimeStamp
    gps[29] = "2026:11:22"  # GPSDateStamp
    scene(64, 48, 0.5, 4).save(os.path.join(fixtures, "gps-clock.jpg"), "JPEG", quality=60, exif=e)
    # No fix: status void, zero coordinates, no hemisphere references.
    e = exif(0.0, 0.0, "2026:11:23 10:00:00", "+01:00", "Acme", "Cam", "X1")
    gps = e.get_ifd(0x8825)
    del gps[1]
    del gps[3]
    gps[9] = "V"  # GPSStatus
    scene(64, 48, 0.5, 5).save(os.path.join(fixtures, "no-fix.jpg"), "JPEG", quality=60, exif=e)


if __name__ == "__main__":
    main()
