"""The teaching file library: cases made from delivered studies, their instances copied
through PS3.15 de-identification into their own storage prefix, key images, search, the
case zip with a rebuilt DICOMDIR. Pure logic: no Flask, no Celery."""
