"""The repository's root folder, for tests at any depth under test/: the nearest folder above with package.xml.

Found by walking up rather than counting ``parent``s, so moving a test between sub-folders changes nothing.
"""
from pathlib import Path

ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / 'package.xml').is_file())
